//! The listening-party page at `/` (`JAM_WEB_UI`): static files embedded in the binary,
//! built on the TypeScript client (`static/jam-client.js` is `clients/ts`'s build; the
//! suite checks the copy is current). In development (no `JAM_JWT_SECRET`, the standalone
//! binary) `/dev/token?name=` hands out tokens signed with the development secret, so a
//! newcomer can try jam in a browser; with a real secret it does not exist.

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::state::AppState;

const INDEX: &str = include_str!("../static/index.html");
const APP: &str = include_str!("../static/app.js");
const CLIENT: &str = include_str!("../static/jam-client.js");
const STYLE: &str = include_str!("../static/style.css");

fn file(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The page's routes (not part of the REST API document).
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|| async { file(INDEX, "text/html; charset=utf-8") }),
        )
        .route("/app.js", get(|| async { file(APP, "text/javascript") }))
        .route(
            "/jam-client.js",
            get(|| async { file(CLIENT, "text/javascript") }),
        )
        .route("/style.css", get(|| async { file(STYLE, "text/css") }))
        .route("/dev/token", get(dev_token))
}

#[derive(Deserialize)]
pub struct Name {
    #[serde(default)]
    name: Option<String>,
}

/// A development token for a display name: a fresh user id per call, 12 hours.
async fn dev_token(State(st): State<AppState>, Query(q): Query<Name>) -> Response {
    if st.cfg.jwt_secret.is_some() {
        return StatusCode::NOT_FOUND.into_response();
    }
    let name: String = q
        .name
        .unwrap_or_default()
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(40)
        .collect();
    let name = if name.is_empty() {
        "Guest".into()
    } else {
        name
    };
    let sub = format!("u-{}", &jam_shared::ids::unique()[..12]);
    let args = crate::cli::GentokenArgs {
        sub: sub.clone(),
        name: Some(name.clone()),
        tenant: None,
        ttl: 12 * 3600,
    };
    let token = crate::cli::gentoken(&st.cfg, &args);
    Json(json!({"token": token, "userId": sub, "userName": name})).into_response()
}
