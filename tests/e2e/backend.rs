//! The application's backend in the loop (dj-system-socketio.md): custom events (`job:*`)
//! forwarded to `JAM_RPC_URL`, answered by the backend, and events the backend pushes back
//! through the publish API. The backend is a stub started by the test.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use jam_tests::{metrics, procs, token, Client};
use serde_json::{json, Value};
use sha2::Sha256;

const SECRET: &str = "rpc-secret";
const API_KEY: &str = "backend-key";

/// What the stub was called with: the body, and whether the signature checked out.
type Calls = Arc<Mutex<Vec<(Value, bool)>>>;

fn signed(headers: &HeaderMap, body: &[u8]) -> bool {
    let (Some(ts), Some(sig)) = (
        headers.get("x-jam-timestamp"),
        headers.get("x-jam-signature"),
    ) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    sig.to_str().unwrap() == format!("v1={hex}")
}

/// A backend: `job:start` succeeds and pushes `job:started` to the caller through jam's
/// publish API (at `jam`, once known), an unknown job is 404, `job:slow` takes 3 s,
/// `job:crash` is a 500.
async fn backend(calls: Calls, jam: Arc<Mutex<String>>) -> String {
    let app = Router::new().route(
        "/rpc",
        post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let (calls, jam) = (calls.clone(), jam.clone());
            async move {
                let v: Value = serde_json::from_slice(&body).unwrap();
                calls
                    .lock()
                    .unwrap()
                    .push((v.clone(), signed(&headers, &body)));
                let job = v["data"]["jobId"].as_i64().unwrap_or(0);
                match v["event"].as_str().unwrap() {
                    "job:slow" => {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        (StatusCode::OK, Json(json!({})))
                    }
                    "job:crash" => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({}))),
                    _ if job == 999 => (
                        StatusCode::NOT_FOUND,
                        Json(json!({"error": "Job not found"})),
                    ),
                    "job:start" => {
                        let publish = jam.lock().unwrap().clone();
                        let pushed = reqwest::Client::new()
                            .post(publish)
                            .header("x-api-key", API_KEY)
                            .json(&json!({"tenant": v["user"]["tenant"],
                                          "target": {"userId": v["user"]["id"]},
                                          "event": "job:started", "data": {"jobId": job}}))
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(pushed.status(), 202);
                        (
                            StatusCode::OK,
                            Json(json!({"ok": true, "jobId": job, "by": v["user"]["id"]})),
                        )
                    }
                    _ => (
                        StatusCode::OK,
                        Json(json!({"ok": true, "jobId": job, "by": v["user"]["id"]})),
                    ),
                }
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}/rpc")
}

/// The gateways' settings for the stub backend at `url`.
fn rpc_env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("JAM_API_KEY", API_KEY.into()),
        ("JAM_RPC_URL", url.into()),
        ("JAM_RPC_SECRET", SECRET.into()),
        ("JAM_RPC_EVENTS", "job:*,poll".into()),
        ("JAM_RPC_TIMEOUT_MS", "800".into()),
        ("JAM_RPC_CONCURRENCY", "1".into()),
    ]
}

fn pairs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test]
async fn custom_events_are_answered_by_the_apps_backend() {
    let calls = Calls::default();
    let publish = Arc::new(Mutex::new(String::new()));
    let url = backend(calls.clone(), publish.clone()).await;
    let jam = procs::standalone(&pairs(&rpc_env(&url))).await;
    *publish.lock().unwrap() = jam.http("/api/publish");
    custom_events(&jam.ws_url(), &jam.http("/metrics"), &calls).await;
}

/// The same through the cluster: the answer comes from gateway B's forward, the pushed
/// `job:started` through the publish API of gateway A and Redis.
#[tokio::test]
async fn custom_events_on_the_cluster() {
    let calls = Calls::default();
    let publish = Arc::new(Mutex::new(String::new()));
    let url = backend(calls.clone(), publish.clone()).await;
    let c = jam_tests::cluster::Cluster::start(&[], &pairs(&rpc_env(&url))).await;
    *publish.lock().unwrap() = c.a.http("/api/publish");
    custom_events(&c.b.ws_url(), &c.b.http("/metrics"), &calls).await;
}

/// dj-system's job events against a jam at `ws` whose backend records into `calls`.
async fn custom_events(ws: &str, metrics_url: &str, calls: &Calls) {
    let tok = token("alice", "Alice", Some("acme"));
    let mut alice = Client::connect(ws, &tok).await;

    // The backend's answer is the reply, by ref.
    let r = alice
        .request(json!({"type": "job:start", "jobId": 1, "idempotencyKey": "k1"}))
        .await;
    assert_eq!(r["type"], "job:start", "{r}");
    assert_eq!(r["result"], json!({"ok": true, "jobId": 1, "by": "alice"}));
    // What the backend pushed while answering reached the caller's connection.
    let started = alice.recv_type("job:started").await;
    assert_eq!(started["jobId"], 1, "{started}");
    {
        let calls = calls.lock().unwrap();
        let (body, signed) = &calls[0];
        assert!(signed, "the call carries a valid signature: {body}");
        assert_eq!(body["event"], "job:start");
        assert_eq!(body["data"], json!({"jobId": 1}), "only the frame's data");
        assert_eq!(
            body["user"],
            json!({"id": "alice", "name": "Alice", "tenant": "acme"})
        );
    }

    // The backend refusing is the client's error, with the backend's message.
    let r = alice
        .request(json!({"type": "job:complete", "jobId": 999}))
        .await;
    assert_eq!(
        (r["type"].as_str(), r["code"].as_str()),
        (Some("error"), Some("BAD_REQUEST")),
        "{r}"
    );
    assert_eq!(r["message"], "Job not found");
    let r = alice.request(json!({"type": "job:crash"})).await;
    assert_eq!(r["code"], "UNAVAILABLE", "{r}");
    assert!(r["message"].as_str().unwrap().contains("HTTP 500"), "{r}");

    // A slow backend: the connection's other frames go on meanwhile; the one call in
    // flight is the cap; the slow one ends as UNAVAILABLE after the timeout.
    alice.send(json!({"type": "job:slow", "ref": "slow"})).await;
    // Until the backend holds the slow call (the one call in flight).
    let t = std::time::Instant::now();
    while !calls
        .lock()
        .unwrap()
        .iter()
        .any(|(c, _)| c["event"] == "job:slow")
    {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the slow call never reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pong = alice.request(json!({"type": "ping"})).await;
    assert_eq!(
        pong["type"], "pong",
        "answered while the call waits: {pong}"
    );
    let busy = alice.request(json!({"type": "poll", "jobId": 2})).await;
    assert_eq!(busy["code"], "UNAVAILABLE", "{busy}");
    assert!(
        busy["message"].as_str().unwrap().contains("in flight"),
        "{busy}"
    );
    let slow = alice
        .recv_where("the slow call's end", |f| f["ref"] == "slow")
        .await;
    assert_eq!(slow["code"], "UNAVAILABLE", "{slow}");
    assert!(
        slow["message"].as_str().unwrap().contains("did not answer"),
        "{slow}"
    );
    let again = alice.request(json!({"type": "poll", "jobId": 2})).await;
    assert_eq!(again["result"]["jobId"], 2, "{again}");

    // Names outside JAM_RPC_EVENTS are not forwarded.
    let n = calls.lock().unwrap().len();
    let r = alice.request(json!({"type": "polls"})).await;
    assert_eq!(r["code"], "BAD_REQUEST", "{r}");
    assert_eq!(calls.lock().unwrap().len(), n);

    let m = metrics::scrape(metrics_url).await;
    for (outcome, at_least) in [
        ("ok", 2.0),
        ("rejected", 1.0),
        ("backend_error", 1.0),
        ("timeout", 1.0),
        ("busy", 1.0),
    ] {
        let got = metrics::sum(&m, "jam_rpc_calls_total", &[("outcome", outcome)]);
        assert!(
            got >= at_least,
            "jam_rpc_calls_total{{outcome={outcome}}} = {got}"
        );
    }
}

#[tokio::test]
async fn a_backend_that_is_not_there_is_a_clear_error() {
    let port = jam_tests::services::free_port();
    let url = format!("http://127.0.0.1:{port}/rpc");
    let jam = procs::standalone(&[("JAM_RPC_URL", &url)]).await;
    let mut c = Client::connect(&jam.ws_url(), &token("bob", "Bob", None)).await;
    let r = c.request(json!({"type": "job:start", "jobId": 1})).await;
    assert_eq!(r["code"], "UNAVAILABLE", "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("could not be reached"),
        "{r}"
    );
}
